"""The plan as data, the planner, the executor; imports only core."""
