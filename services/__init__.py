"""Services: the invoker and what it and the nodes use (stores, queue, events, cache, models).

Each service is an abstract base class with one light local implementation.  Importing this
package imports no torch; the model manager is created on first use.
"""
