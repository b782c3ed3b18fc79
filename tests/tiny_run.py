"""The smallest training run the tests make: svhn at width 1/8 on 64 Fashion-MNIST images, one
thread, no progress bar (TrainConfig keywords)."""

TINY = dict(
    model="svhn",
    data="fashion-mnist",
    width=0.125,
    batch_size=32,
    subset=64,
    test_subset=32,
    threads=1,
    progress=False,
)
