"""``corpusflow eval``: measures of what the models say (Video-MME accuracy, reference-free knowledge-graph
scores, timestamp grounding) and the text metrics (WER, CER) the quality docs and tests use."""
