"""Atoms: the union-find over array axes that decides which axes carry the same channel index.

Every axis of every value in a traced program is an *atom* of its size. Two axes that must carry the same index
(the two operands of an add, a conv's output features and the next BatchNorm's scale, a residual stream) are
unioned. An axis can also be a row-major product of smaller atoms: ``reshape(q, (b, t, heads, head_dim))`` makes
the flat projection axis the product [heads, head_dim], so an atom may be *refined* into factors, and a union of
two composite axes unions them factor by factor after refining both to common boundaries. The *leaves* of an atom
(its factors, recursively, size-1 factors dropped) are the units a fold can act on.

An atom class can be *poisoned* with the reason it must never fold (reduced over, sliced, reaches the output, …);
poison spreads to every atom the class is unioned with and to the factors it is later refined into.
"""

from __future__ import annotations

import math


class Atoms:
    def __init__(self) -> None:
        self._parent: list[int] = []
        self._size: list[int] = []
        self._factors: dict[int, tuple[int, ...]] = {}
        self._poison: dict[int, str] = {}

    # --- basics ---------------------------------------------------------------------------------------------------
    def new(self, size: int, poison: str | None = None) -> int:
        self._parent.append(len(self._parent))
        self._size.append(int(size))
        atom = len(self._parent) - 1
        if poison is not None:
            self._poison[atom] = poison
        return atom

    def composite(self, parts: list[int]) -> int:
        """A new atom that is the row-major product of ``parts`` (size-1 parts dropped)."""
        parts = [p for p in parts if self.size(p) > 1]
        if len(parts) == 1:
            return parts[0]
        atom = self.new(math.prod(self.size(p) for p in parts))
        if parts:
            self._factors[atom] = tuple(parts)
        return atom

    def find(self, atom: int) -> int:
        root = atom
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[atom] != root:  # path compression
            self._parent[atom], atom = root, self._parent[atom]
        return root

    def size(self, atom: int) -> int:
        return self._size[atom]

    def leaves(self, atom: int) -> list[int]:
        """The atom's finest factors, outermost first, as class roots; size-1 factors dropped."""
        root = self.find(atom)
        if root in self._factors:
            return [leaf for f in self._factors[root] for leaf in self.leaves(f)]
        return [root] if self._size[root] > 1 else []

    def reason(self, atom: int) -> str | None:
        """Why the class of ``atom`` (a leaf) must not fold, or None."""
        return self._poison.get(self.find(atom))

    def poison(self, atom: int, reason: str) -> None:
        """Mark every leaf of ``atom`` unfoldable (the first reason a class gets is kept)."""
        for leaf in self.leaves(atom):
            self._poison.setdefault(leaf, reason)

    # --- refinement and union ---------------------------------------------------------------------------------
    def _refine(self, atom: int, boundaries: set[int]) -> bool:
        """Split leaves of ``atom`` so that every cumulative product in ``boundaries`` falls between two leaves.
        False when a boundary cannot (it does not divide the leaf it falls in)."""
        done = False
        while not done:
            done = True
            outer = 1
            for leaf in self.leaves(atom):
                size = self._size[leaf]
                inside = [b for b in boundaries if outer < b < outer * size]
                if inside:
                    b = min(inside)
                    if b % outer or size % (b // outer):
                        return False
                    first = b // outer
                    parts = (self.new(first, self._poison.get(leaf)), self.new(size // first, self._poison.get(leaf)))
                    self._factors[leaf] = parts
                    done = False
                    break
                outer *= size
        return True

    def _boundaries(self, atom: int) -> set[int]:
        out, outer = set(), 1
        for leaf in self.leaves(atom):
            outer *= self._size[leaf]
            out.add(outer)
        return out

    def union(self, a: int, b: int) -> bool:
        """Make ``a`` and ``b`` carry the same index (factor by factor). False (and both poisoned) when their
        factorisations cannot be aligned."""
        if self._size[a] != self._size[b]:
            raise AssertionError(f"internal: union of atoms of sizes {self._size[a]} and {self._size[b]}")
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        bounds = self._boundaries(ra) | self._boundaries(rb)
        if not (self._refine(ra, bounds) and self._refine(rb, bounds)):
            reason = "reshaped in two ways that do not align (e.g. (6, 4) ↔ (4, 6))"
            self.poison(ra, reason)
            self.poison(rb, reason)
            return False
        la, lb = self.leaves(ra), self.leaves(rb)
        for x, y in zip(la, lb, strict=True):
            self._link(self.find(x), self.find(y))
        ra, rb = self.find(ra), self.find(rb)
        if ra != rb:
            self._link(ra, rb)
        return True

    def _link(self, ra: int, rb: int) -> None:
        if ra == rb:
            return
        if ra in self._factors and rb not in self._factors:
            ra, rb = rb, ra
        self._parent[ra] = rb
        if ra in self._poison:
            self._poison.setdefault(rb, self._poison[ra])

    def split(self, atom: int, sizes: list[int]) -> list[int] | None:
        """``atom`` seen as the row-major product of ``sizes``: one atom per size (a size-1 part is a new atom), or
        None when the atom's factors cannot be cut there."""
        bounds, outer = set(), 1
        for s in sizes:
            outer *= s
            bounds.add(outer)
        if not self._refine(atom, bounds):
            return None
        leaves = self.leaves(atom)
        out, i = [], 0
        for s in sizes:
            parts, product = [], 1
            while product < s and i < len(leaves):
                parts.append(leaves[i])
                product *= self._size[leaves[i]]
                i += 1
            out.append(self.composite(parts) if parts else self.new(s))
        return out
