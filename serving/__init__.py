"""TorchServe side of ctloop: model archives, handlers, the local server, the model store.

A regular package (not a namespace one) so its data files (config.properties, log4j2.xml,
handlers/) are found with importlib.resources wherever ctloop is installed.
"""
