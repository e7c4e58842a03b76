"""The feature cache: the frozen encoders run once per split and their pooled features stored in
memory-mapped arrays (`format`), built by `builder` from `sources`, checked against `content`."""
