"""Helpers shared by the test suites: real servers on free ports, a scripted upstream."""
