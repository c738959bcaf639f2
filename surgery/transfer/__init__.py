"""Moving weights between models: rules, adapters, matching, the transplant report, applying a plan, exporting state dicts."""
