-- Minimal config for the headless Neovim test: this repo's plugin, the language server from this Python.
vim.opt.rtp:prepend(vim.env.DIFFILL_PLUGIN)
vim.opt.swapfile = false
require("diffill").setup({ cmd = { vim.env.DIFFILL_PYTHON, "-m", "lsp" }, debounce_ms = 30 })
-- What the plugin tells the user, for the test to read (and so a headless Neovim never waits on a prompt).
_G.notes = {}
vim.notify = function(msg, level) table.insert(_G.notes, { msg = msg, level = level or vim.log.levels.INFO }) end
