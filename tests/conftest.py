import os

import pytest
import torch

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def pytest_configure(config):
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from dorefa.say import LAUNCHER_VARS

    for name in LAUNCHER_VARS:  # left in a torchrun shell, they made every train() join a group
        os.environ.pop(name, None)


@pytest.fixture(scope="session")
def fashion_dir():
    if not os.path.exists(os.path.join(FASHION_DIR, "t10k-labels-idx1-ubyte.gz")):
        pytest.fail(
            f"real Fashion-MNIST missing in {FASHION_DIR}: apt-get install dataset-fashion-mnist"
        )
    return FASHION_DIR
