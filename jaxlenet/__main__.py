from jaxlenet.cli import entry

entry()
