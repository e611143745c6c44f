import PCacheCore

print("pcache-ublk: under construction")
