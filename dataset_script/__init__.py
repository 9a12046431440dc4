"""Step-CoT data, the whole data layer (not a `datasets` loading script: datasets 5 runs none): release reader,
validation, importers, Hub-layout build and export, synthetic demo data and report annotation."""
