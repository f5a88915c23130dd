"""The API's routers: thin layers over the services."""
