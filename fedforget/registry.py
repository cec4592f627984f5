"""The registries of what a run config names by string: datasets and models.

Each maps a name to ``"module:attribute"`` (imported when first asked for,
so that validating a config imports neither torch nor any loader) and to the
modules whose source shapes what the entry builds. :meth:`Registry.register`
adds an entry at run time: a plug-in outside this package, or a test's toy.
A plug-in that the ClientApps need too (a dataset, a model) is named in the
run config's ``plugins`` key, so that every process imports it and its
``register`` calls run there as well.

Unlearning methods have their own registry (:mod:`fedforget.methods`), as
they declare more than a name (settings, needs, client steps).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Entry:
    """One registered name: what it resolves to and the code it depends on."""

    name: str
    target: Any
    """``"module:attribute"`` (built-in entries) or the registered object itself."""
    depends_on: tuple[str, ...]
    """Modules whose source shapes what the entry builds (data cache keys include it)."""
    builtin: bool


class Registry:
    """Names of one kind (``dataset``, ``model``) and what each resolves to.

    Parameters
    ----------
    kind : str
        What an entry is, for messages ("dataset").
    builtins : Mapping[str, tuple[str, Sequence[str]]]
        Built-in entries: name -> (``"module:attribute"``, modules it depends on).

    """

    def __init__(self, kind: str, builtins: Mapping[str, tuple[str, Sequence[str]]]) -> None:
        self.kind = kind
        self._entries = {
            name: Entry(name, target, tuple(depends_on), builtin=True)
            for name, (target, depends_on) in builtins.items()
        }
        self._resolved: dict[str, Any] = {}
        self._fingerprints: dict[Entry, str] = {}

    def register(
        self, name: str, target: Callable[..., Any], *, depends_on: Sequence[str] | None = None
    ) -> Callable[..., Any]:
        """Add ``target`` under ``name``; return it.

        ``depends_on`` names the modules whose source shapes what ``target``
        builds (default: the module that defines it); caches keyed on the entry
        are rebuilt when their source changes. Registering a name again
        replaces the earlier plug-in; a built-in name is refused.
        """
        if not name or name != name.strip():
            raise ValueError(f"a {self.kind} name must be non-empty text, got {name!r}")
        if name in self._entries and self._entries[name].builtin:
            raise ValueError(f"a built-in {self.kind} is named {name!r}: choose another name")
        modules = tuple(depends_on) if depends_on is not None else (_defining_module(target),)
        for module in modules:
            source_file(module)  # a module without findable source is refused now, not later
        self._entries[name] = Entry(name, target, modules, builtin=False)
        self._resolved.pop(name, None)
        return target

    def unregister(self, name: str) -> None:
        """Remove a plug-in (built-in entries stay)."""
        entry = self._entries.get(name)
        if entry is not None and entry.builtin:
            raise ValueError(f"{name!r} is a built-in {self.kind}: it cannot be unregistered")
        self._entries.pop(name, None)
        self._resolved.pop(name, None)

    def names(self) -> list[str]:
        """Every registered name: built-in ones in registry order, then plug-ins."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def entry(self, name: str) -> Entry:
        """The entry of ``name``; a KeyError lists the registered names."""
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(self.unknown(name)) from None

    def unknown(self, name: str) -> str:
        """The message for an unknown ``name``: what is registered instead."""
        return f"unknown {self.kind} {name!r}: choose one of {', '.join(self.names())}"

    def get(self, name: str) -> Any:
        """What ``name`` resolves to (built-in entries are imported on first use).

        Raises
        ------
        ValueError
            For an unknown name; the message lists the registered ones.

        """
        if name not in self._entries:
            raise ValueError(self.unknown(name))
        if name not in self._resolved:
            target = self._entries[name].target
            if isinstance(target, str):
                module, _, attribute = target.partition(":")
                target = getattr(importlib.import_module(module), attribute)
            self._resolved[name] = target
        return self._resolved[name]

    def fingerprint(self, name: str) -> str:
        """SHA-256 (hex) of the source of the modules ``name`` depends on."""
        entry = self.entry(name)
        if entry not in self._fingerprints:
            digest = hashlib.sha256()
            for module in entry.depends_on:
                digest.update(module.encode())
                digest.update(source_file(module).read_bytes())
            self._fingerprints[entry] = digest.hexdigest()
        return self._fingerprints[entry]


def _defining_module(target: Callable[..., Any]) -> str:
    """The module that defines ``target`` (through ``functools.partial``)."""
    inner = getattr(target, "func", target)
    module = getattr(inner, "__module__", None)
    if not module:
        raise ValueError(f"cannot tell which module defines {target!r}: pass depends_on")
    return str(module)


def source_file(module: str) -> Path:
    """The source file of ``module``, found without importing it when it is not loaded yet.

    Raises
    ------
    ValueError
        If the module has no source file (an interactive session, a C extension).

    """
    loaded = sys.modules.get(module)
    path = getattr(loaded, "__file__", None) if loaded is not None else None
    if path is None and loaded is None:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        path = spec.origin if spec is not None and spec.has_location else None
    if not path or not str(path).endswith(".py") or not Path(path).is_file():
        raise ValueError(
            f"module {module!r} has no Python source file to fingerprint: define the plug-in in "
            f"a module file, or name the modules it depends on with depends_on=(...)"
        )
    return Path(path)


DATASET_REGISTRY = Registry(
    "dataset",
    {
        "digits": ("fedforget.data.datasets:load_digits_split", ("fedforget.data.datasets",)),
        "fashion-mnist": (
            "fedforget.data.datasets:load_fashion_mnist_split",
            ("fedforget.data.datasets",),
        ),
        "cifar10": ("fedforget.data.datasets:load_cifar10", ("fedforget.data.cifar",)),
        "cifar100": ("fedforget.data.datasets:load_cifar100", ("fedforget.data.cifar",)),
        "cifar10-standin": (
            "fedforget.data.datasets:load_cifar10_standin",
            ("fedforget.data.cifar",),
        ),
        "cifar100-standin": (
            "fedforget.data.datasets:load_cifar100_standin",
            ("fedforget.data.cifar",),
        ),
        "prostate": ("fedforget.data.prostate:load_prostate_split", ("fedforget.data.prostate",)),
        "prostate-synthetic": (
            "fedforget.data.prostate:load_prostate_synthetic_split",
            ("fedforget.data.prostate",),
        ),
    },
)
"""Datasets: loaders called as ``loader(data_dir, test_fraction, seed, *, image_size=0,
download=False)`` returning a :class:`~fedforget.data.split.SplitDataset`."""

MODEL_REGISTRY = Registry(
    "model",
    {
        "cnn": ("fedforget.models:SmallCNN", ("fedforget.models",)),
        "mlp": ("fedforget.models:TinyMLP", ("fedforget.models",)),
        "resnet18": ("fedforget.models:resnet18", ("fedforget.models",)),
        "resnet18-bn": ("fedforget.models:resnet18_batchnorm", ("fedforget.models",)),
        "vit": ("fedforget.models:small_vit", ("fedforget.models",)),
        "unet": ("fedforget.models:unet", ("fedforget.models",)),
        "unet-small": ("fedforget.models:unet_small", ("fedforget.models",)),
    },
)
"""Models: factories called as ``factory(input_shape, num_classes)`` returning an
``nn.Module`` (its weights drawn under the seed :func:`fedforget.models.build_model` sets)."""
