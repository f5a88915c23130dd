"""Settings, the command line, and (later) the web service of kbqa."""
