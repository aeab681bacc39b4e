"""The MRF-SSM acceptance check of generated image/heatmap pairs (Hadzic et al., sect. 2.2): its
configuration, shape statistics, MRF labelling, rules, the checker, sample-folder runs, the acceptance-rate
protocol and the corruptions that stress it."""
