# Lets the tests import the top-level modules (model, data, ...) from a clean checkout.
