"""The project's tests: one folder per package, factories that generate every test object, no real patient data."""
