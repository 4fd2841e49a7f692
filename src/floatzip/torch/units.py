"""Which modules on-the-fly decoding decodes together.

A *unit* is a module whose parameters are decoded together, just before its
forward: each child of the model's repeated-block ``nn.ModuleList`` (found
generically, see :func:`find_block_lists`), the input embeddings and the
output head. Everything else (norms, biases outside blocks, position
embeddings, buffers) is decoded once at load.
"""
from __future__ import annotations

from torch import nn


def find_block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """The model's repeated blocks: ``nn.ModuleList``s of at least two
    children of one class that hold parameters, not nested in another such
    list, keeping those with at least half the parameters of the largest
    (an encoder-decoder has two stacks). In module order."""
    candidates = []
    for name, module in model.named_modules():
        if (isinstance(module, nn.ModuleList) and len(module) >= 2
                and len({type(child) for child in module}) == 1):
            size = sum(p.numel() for p in module.parameters())
            if size:
                candidates.append((name, module, size))
    top = [c for c in candidates
           if not any(o is not c and c[0].startswith(o[0] + ".") for o in candidates)]
    if not top:
        return []
    largest = max(size for _, _, size in top)
    return [(name, module) for name, module, size in top if 2 * size >= largest]


def _embedding_module(model, getter: str):
    fn = getattr(model, getter, None)
    if fn is None:
        return None
    try:
        module = fn()
    except (NotImplementedError, AttributeError):
        return None
    return module if isinstance(module, nn.Module) else None


def unit_modules(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """(kind, module name, module) of every unit, in the order a forward
    normally runs them: input embeddings, blocks, output head."""
    names = {id(m): n for n, m in model.named_modules()}
    blocks = [(f"{list_name}.{i}" if list_name else str(i), child)
              for list_name, blocks_list in find_block_lists(model)
              for i, child in enumerate(blocks_list)]
    block_prefixes = [n + "." for n, _ in blocks] + [n + "." for n, _ in find_block_lists(model)]

    def usable(module):
        if module is None or id(module) not in names:
            return None
        name = names[id(module)]
        if not name or any(name.startswith(p) or p.startswith(name + ".") for p in block_prefixes):
            return None         # inside a block, or holding the blocks: not a unit of its own
        return name if next(module.parameters(), None) is not None else None

    units = []
    emb = _embedding_module(model, "get_input_embeddings")
    if (name := usable(emb)) is not None:
        units.append(("embeddings", name, emb))
    units += [("block", name, module) for name, module in blocks]
    head = _embedding_module(model, "get_output_embeddings")
    if head is not emb and (name := usable(head)) is not None:
        units.append(("head", name, head))
    return units


def owner_prefixes(units) -> list[str]:
    """The parameter-name prefixes of ``units`` (as :func:`unit_modules`
    gives them): a parameter whose name starts with one belongs to a unit."""
    return [name + "." for _, name, _ in units]


def deferrable_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters that on-the-fly decoding leaves compressed:
    those of the unit modules, unless a module outside every unit also
    holds the same Parameter (it would run with a placeholder)."""
    prefixes = owner_prefixes(unit_modules(model))
    names_of: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(name)
    out = set()
    for names in names_of.values():
        if all(any(n.startswith(p) for p in prefixes) for n in names):
            out.update(names)
    return out
