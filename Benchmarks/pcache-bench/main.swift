import PCacheCore

print("pcache-bench: under construction")
