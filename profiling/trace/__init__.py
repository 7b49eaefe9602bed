"""Reading captures: the `.xplane.pb` XSpace, the HLO programs it embeds, and the XLA op
executions on its host threads and device lines."""
