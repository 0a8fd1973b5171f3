"""One module per family of formats; each loader takes a ``SourceFile`` and the size cap and returns
a ``LoadedDocument`` or raises ``SkipFile``. ``ingest.loaders`` maps file names to them."""
