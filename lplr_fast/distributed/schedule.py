"""Which rank computes which tile: a deterministic, cost-balanced split of the tile grid.

The grid is that of :func:`lplr_fast.ntk_blocks` with a given block size: tiles (bi, bj) in
row-major order, only bj ≥ bi when x2 is None. A tile's cost is the number of kernel entries
it computes (sample pairs; a diagonal block computes its upper triangle, b(b+1)/2 pairs,
which is what the CPU kernel does; on a GPU it costs about b² — the split is off by at most
one diagonal tile per rank then). The row-major order is cut into ``world`` contiguous runs
of near-equal cost: run p ends at the first tile where the running cost reaches p/world of
the total (whichever of that tile and the one before lands closer). Contiguous runs keep
each rank's row blocks few and its column blocks cached, so features are recomputed per rank
rather than communicated (docs/SCALING.md). Every rank derives the same split from
(grid, world) alone; a run with a different world size on the same store gets another split
of the same tiles.
"""

from __future__ import annotations

from dataclasses import dataclass

Tile = tuple[int, int]


@dataclass(frozen=True)
class TileGrid:
    """The tiles of an n1 × n2 kernel in blocks of ``block`` samples (upper triangle of
    blocks when ``symmetric``)."""

    n1: int
    n2: int
    block: int
    symmetric: bool

    def __post_init__(self) -> None:
        if self.block < 1 or self.n1 < 1 or self.n2 < 1:
            raise ValueError(f"a tile grid needs n1, n2, block ≥ 1, got {self}")
        if self.symmetric and self.n1 != self.n2:
            raise ValueError("a symmetric grid needs n1 == n2")

    @property
    def shape(self) -> tuple[int, int]:
        """(row blocks, column blocks)."""
        return -(-self.n1 // self.block), -(-self.n2 // self.block)

    def tiles(self) -> list[Tile]:
        """Every tile, row-major (the order of ``ntk_blocks``)."""
        rows, cols = self.shape
        return [(bi, bj) for bi in range(rows) for bj in range(bi if self.symmetric else 0, cols)]

    def slices(self, tile: Tile) -> tuple[slice, slice]:
        """(rows, cols) sample slices of a tile."""
        bi, bj = tile
        b = self.block
        return slice(bi * b, min(self.n1, (bi + 1) * b)), slice(bj * b, min(self.n2, (bj + 1) * b))

    def cost(self, tile: Tile) -> int:
        """Sample pairs the tile computes."""
        r, c = self.slices(tile)
        rows, cols = r.stop - r.start, c.stop - c.start
        if self.symmetric and tile[0] == tile[1]:
            return rows * (rows + 1) // 2
        return rows * cols


def split(grid: TileGrid, world: int, tiles: list[Tile] | None = None) -> list[list[Tile]]:
    """The tiles of each rank (list index = rank), contiguous runs of the row-major order
    with near-equal cost (module docstring). Ranks beyond the number of tiles get none.
    ``tiles``: split only these (e.g. the ones a store still misses), default all."""
    if world < 1:
        raise ValueError(f"world size must be ≥ 1, got {world}")
    tiles = grid.tiles() if tiles is None else sorted(tiles)
    prefix = [0]
    for tile in tiles:
        prefix.append(prefix[-1] + grid.cost(tile))
    total = prefix[-1]
    cuts = [0]
    for p in range(1, world):
        target = total * p / world
        i = next((j for j in range(cuts[-1], len(tiles) + 1) if prefix[j] >= target), len(tiles))
        if i > cuts[-1] and target - prefix[i - 1] < prefix[i] - target:
            i -= 1
        cuts.append(max(i, cuts[-1]))
    cuts.append(len(tiles))
    return [tiles[cuts[p] : cuts[p + 1]] for p in range(world)]


def shard(count: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous share of ``count`` items (sizes differ by at most one)."""
    base, extra = divmod(count, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


__all__ = ["Tile", "TileGrid", "shard", "split"]
