"""The root side: narrowly typed oslo.privsep entrypoints."""
