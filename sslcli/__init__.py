"""sslcli: self-supervised visual representation learning from the command line, and from Python:

    import sslcli
    run = sslcli.pretrain("simclr", out="runs/a", epochs=2)
    sslcli.knn("runs/a", data="synthetic:shapes")

The functions live in `sslcli.api` and are imported on first use, so `import sslcli` stays light.
"""
__version__ = "0.1.0"

_API = ("pretrain", "knn", "probe", "finetune", "visualize_neighbours", "load_backbone", "export_model", "info",
        "list_methods", "list_recipes")

__all__ = [*_API, "UserError", "__version__"]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    if name == "UserError":
        from .errors import UserError

        return UserError
    raise AttributeError(f"module 'sslcli' has no attribute '{name}'")
