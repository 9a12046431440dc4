"""Step-CoT data: release reader, validation, Hub-layout export, synthetic demo data and report annotation."""
