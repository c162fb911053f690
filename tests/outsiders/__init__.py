"""Programs that play teams outside baton: run as their own processes, they import nothing of it."""
