"""The original release's ``utils.vis_tools`` names that its README's Python snippet imports (see ``helpers``)."""
