"""Request and response bodies, apart from the routes that use them."""
