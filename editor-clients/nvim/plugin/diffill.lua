-- Loaded by Neovim at start-up; nothing happens until require("diffill").setup{} is called.
if vim.g.loaded_diffill then return end
vim.g.loaded_diffill = true
