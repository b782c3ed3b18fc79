"""Result rows of made-up accuracies for the sweep tests."""

from dorefa.sweep import CellResult


def make_row(w, a, g, width=1.0, init="", acc=0.5, status="ok", **kw) -> CellResult:
    """The row of cell svhn-wWaAgG-xWIDTH[-init][-sSEED] with test accuracy ``acc``."""
    seed = kw.get("seed") or 0
    name = f"svhn-w{w}a{a}g{g}-x{width}" + ("-init" if init else "") + (f"-s{seed}" if seed else "")
    return CellResult(name, "svhn", "fashion-mnist", w, a, g, width, init, status, acc, acc, **kw)
