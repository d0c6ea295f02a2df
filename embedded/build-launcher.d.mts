export interface BuildResult { ok: boolean; path?: string; reason?: string }
export function buildLauncher(opts?: { quiet?: boolean }): BuildResult;
export function launcherPath(): string;
