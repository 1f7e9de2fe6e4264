"""The sample pool of one run: a Zarr v3 group with one set of arrays per round, by role:

    selection.py   which samples a round holds and keeps: per-sample seeds, class-balanced labels,
                   the prune selection, a round's difficulty and label fidelity (pure)
    shards.py      a round split into shard tasks of whole chunks (pure; the coordinator's plan)
    writer.py      `Pool`: rounds created, chunks written then marked, rounds completed; the layout
                   on disk and why it is safe under concurrency and crashes
    reader.py      `PoolReader`: the completed rounds as one indexable dataset, cached

The JPEG codec and single-image reader of RGB rounds are dp_hpc/pool_jpeg.py; the paths are
dp_hpc/layout.py's. The names below are the package's surface: `from dp_hpc.pool import Pool, ...`.
"""

from dp_hpc.layout import COMPLETE, MARKER_DIR, POOL_DIR, RunDir, round_name  # noqa: F401 (as the one-module pool.py)
from dp_hpc.pool.reader import PoolReader  # noqa: F401
from dp_hpc.pool.selection import balanced_labels, round_stats, sample_seeds, top_entropy  # noqa: F401
from dp_hpc.pool.shards import ChunkRange, shard_ranges, shard_tuple  # noqa: F401
from dp_hpc.pool.writer import Pool, RoundSpec  # noqa: F401
from dp_hpc.pool_jpeg import JpegCodec, JpegShardReader, estimated_bytes_per_image, uses_jpeg  # noqa: F401 (as the one-module pool.py)
