"""What the running ComfyUI offers beyond the oldest host we support (0.8.0), decided once, here.

Each answer is read from the host itself (its V3 API's signatures, its own loader nodes), never from a version
number, so a host that back- or forward-ports a feature gets it. The nodes ask only this module."""

from __future__ import annotations

import dataclasses
import inspect

from comfy_api.latest import io

# `advanced=True` on an input (0.33): the frontend folds it behind "Show advanced inputs" in Vue mode.
ADVANCED_INPUTS = "advanced" in inspect.signature(io.Input.__init__).parameters
# `search_aliases` on a schema (0.33): more words the node search box finds a node by.
SEARCH_ALIASES = "search_aliases" in {f.name for f in dataclasses.fields(io.Schema)}


def advanced() -> dict:
    """Keyword arguments that mark an input as an expert setting where the host can show it so."""
    return {"advanced": True} if ADVANCED_INPUTS else {}


def search_aliases(*words: str) -> dict:
    """Keyword arguments for `io.Schema` that give it search words where the host takes them."""
    return {"search_aliases": list(words)} if SEARCH_ALIASES else {}


def loaders_category() -> str:
    """The node-library folder of the host's own model loaders ('loaders' in 0.8.0, 'model/loaders' in 0.33), so
    ours sit beside them and the pack shows as one folder per purpose, not a folder of its own at the top."""
    import nodes as core_nodes  # ComfyUI's own nodes.py (ComfyUI's root is first on sys.path; loaded before packs)

    return core_nodes.CheckpointLoaderSimple.CATEGORY
