"""What a method plugin needs, from one stable place:

    from sslcli.plugin import Batch, Method, MethodConfig, MethodContext, ViewAugment, option, register_method

A plugin package registers its module in the "sslcli.methods" entry-point group (and, to ship
recipes, a package of YAML files in "sslcli.recipes"); see the README's "Writing a method"."""

from .data.augment import ViewAugment
from .data.images import Batch
from .methods.base import Method, MethodContext, StepOutput, projection_mlp
from .recipe import MethodConfig, option
from .registry import register_method

__all__ = ["Batch", "Method", "MethodConfig", "MethodContext", "StepOutput", "ViewAugment", "option",
           "projection_mlp", "register_method"]
