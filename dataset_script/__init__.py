"""Step-CoT data: the whole data layer, not a `datasets` loading script (datasets 5 runs none).

    release.py           `StepCoTRelease`: a release folder read, validated and split; its fingerprint
    records.py           one record: field aliases, answers -> labels, `parse_record` / `validate_record`, the error
    images.py            a record's image file: found inside the release only, decoded in full, perceptual hash
    splits.py            split files (train/val/test .xlsx/.csv) and the seeded patient-grouped stratified split
    schema.py            the step schema of a release: `schema.json`, or inferred from the records
    record_stream.py     `data.json` read one record at a time, records kept compact
    safe_paths.py        paths from untrusted text resolved inside one root folder only
    importers.py         `stepcot data import`: image folders, tables and reports -> a release folder
    synthetic.py         the synthetic release behind the "demo" source (`stepcot data demo`)
    parquet_export.py    a release -> Parquet shards + dataset card (`stepcot data build`), and the push to the Hub
    shard_writer.py      rows streamed into size-bounded Parquet shards
    release_download.py  a raw release on the Hub downloaded, unpacked safely and built
    sources.py           what `--dataset` names ("demo", a release, a built folder, a Hub id) -> a `DatasetDict`
    annotate/            free-text reports -> seven-step chains (rules, MeSH, an LLM backend)
"""
