"""latentserve: the web service. Routes never touch torch; the batcher never knows HTTP."""
