"""Invocations (nodes).  Every module in this folder is imported by `nodes.discovery` and its
node classes register themselves; user plugins (.py files in the plugin folder) do the same."""
