"""Background delivery: the engine, its disk spool, and the backends' wire protocols."""
