pytest_plugins = ["tests.db_fixtures", "tests.model_fixtures"]
