"""Generators of test data (MR series, RT plans, QA results, Enhanced MR): the project makes every object it tests with."""
