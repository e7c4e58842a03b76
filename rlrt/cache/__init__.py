"""The feature cache: the frozen encoders run once per split and their pooled features stored in
memory-mapped arrays (`format`: the layout), written by `writer` and read by `reader` under the
folder's `lock`, built by `builder` from `sources` when it fits (`space`), checked against
`content`."""
