"""genexport: gentrain checkpoints -> verified, self-contained ONNX engines.

`export.export_checkpoint` is the entry point (and `genexport onnx` its CLI);
`graphs` holds the export-only modules per role, `onnx` the exporter and
checks, `fp16` the float16 conversion, `verify` the parity checks. The
manifest each engine carries is defined in `genrun.manifest`.
"""
