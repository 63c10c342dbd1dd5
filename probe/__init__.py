"""stageprobe: is staging fit to deploy and test against right now, and if not, exactly why?"""

__version__ = "0.1.0"
