-- :checkhealth diffill
local M = {}

function M.check()
  local d = require("diffill")
  vim.health.start("diffill")
  local exe = d.config.cmd[1]
  if vim.fn.executable(exe) == 1 then
    vim.health.ok("language server command found: " .. table.concat(d.config.cmd, " "))
  else
    vim.health.error("not executable: " .. exe, { "pip install diffill, or set cmd in require('diffill').setup{}" })
  end
  if vim.lsp.inline_completion then
    vim.health.ok("Neovim has vim.lsp.inline_completion: native ghost text")
  else
    vim.health.info("Neovim < 0.12: diffill draws its own ghost text")
  end
  local clients = vim.lsp.get_clients({ name = "diffill" })
  if #clients > 0 then
    vim.health.ok("diffill language server running (" .. #clients .. " client)")
  else
    vim.health.info("no diffill language server attached yet (open a " .. table.concat(d.config.filetypes, "/") .. " file)")
  end
end

return M
