"""Hardware probe and planner: facts about the device, and a plan for each model from them."""
