"""The cervical spine CT models: RSNA-layout data, training loops, evaluation, model cards."""
