__version__ = "0.1.0"
#: bumped when saved workflow JSON changes incompatibly; see flowbot.graph.io
IR_SCHEMA_VERSION = 1
