"""TFDS datasets read from a local `data_dir`, never downloaded."""

from __future__ import annotations

from mobilevision.data.image_folder import DatasetError


def load_tfds(name: str, split: str, data_dir: str | None, input_context=None):
    """Returns (tf.data.Dataset of feature dicts, tfds.core.DatasetInfo).

    input_context: a tf.distribute.InputContext with N input pipelines: the dataset holds only
    pipeline i's share of the split, the i-th of N even, disjoint ranges of its examples
    (`tfds.even_splits`, remainder left out so every worker's epoch is as long), and only those
    records are read and decoded.

    Raises DatasetError naming the dataset and data_dir when it is not prepared there (no download
    is attempted: this toolkit never fetches data at run time)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # unknown name and no prepared files
        raise DatasetError(
            f"TFDS dataset '{name}' is not available in data_dir '{data_dir}': {e}") from None
    if not builder.is_prepared():
        raise DatasetError(
            f"TFDS dataset '{name}' is not prepared in data_dir '{data_dir}' (expected "
            f"{builder.data_dir}); prepare it there first (e.g. `tfds build {name} "
            f"--data_dir {data_dir}` with manual files). Nothing is downloaded at run time.")
    if split not in builder.info.splits:
        raise DatasetError(
            f"TFDS dataset '{name}' has no split '{split}'; it has {sorted(builder.info.splits)}")
    if input_context is not None and input_context.num_input_pipelines > 1:
        split = tfds.even_splits(split, input_context.num_input_pipelines,
                                 drop_remainder=True)[input_context.input_pipeline_id]
    ds = builder.as_dataset(split=split, shuffle_files=False)
    return ds, builder.info
