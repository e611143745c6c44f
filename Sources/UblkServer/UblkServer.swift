import PCacheCore
