"""waypost: an L7 waypoint for ambient service meshes."""
