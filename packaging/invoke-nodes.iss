; Inno Setup script for the Windows installer (Inno Setup 6).  It cannot be built on the Linux
; machines of this project: on Windows, first `python packaging\build.py` (makes dist\invoke-nodes\
; with invoke-nodes.exe, windowed, and invoke-nodes-cli.exe, console), then
;   iscc /DAppVersion=0.1.0 /DVariant=cuda packaging\invoke-nodes.iss
; Keep in step with packaging/invoke-nodes.spec (executable names, icon) and pyproject.toml (version).

#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif
#ifndef Variant
  #define Variant "cuda"
#endif

[Setup]
AppId={{6C1D8F4E-2B7A-4B9E-9D35-7E0A51C3F2A8}
AppName=invoke-nodes
AppVersion={#AppVersion}
AppPublisher=invoke-nodes
DefaultDirName={autopf}\invoke-nodes
DefaultGroupName=invoke-nodes
DisableProgramGroupPage=yes
; per-user install by default (no admin prompt); the user may choose all users
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
; paths are relative to this script's folder (packaging\)
SourceDir=..
OutputDir=dist
OutputBaseFilename=invoke-nodes-{#AppVersion}-windows-x64-{#Variant}-setup
SetupIconFile=assets\icon.ico
UninstallDisplayIcon={app}\invoke-nodes.exe
; torch's libraries are large: LZMA2 in one solid block compresses them best
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern
ChangesEnvironment=yes

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked
Name: "addtopath"; Description: "Add invoke-nodes-cli to PATH (for the command line: run, cli, api)"; Flags: unchecked

[Files]
Source: "dist\invoke-nodes\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{group}\invoke-nodes"; Filename: "{app}\invoke-nodes.exe"
Name: "{group}\invoke-nodes API server"; Filename: "{app}\invoke-nodes-cli.exe"; Parameters: "api"
Name: "{group}\Uninstall invoke-nodes"; Filename: "{uninstallexe}"
Name: "{autodesktop}\invoke-nodes"; Filename: "{app}\invoke-nodes.exe"; Tasks: desktopicon

[Registry]
; the user PATH (HKCU) for a per-user install, the system PATH for an all-users one
Root: HKA; Subkey: "{code:EnvKey}"; ValueType: expandsz; ValueName: "Path"; ValueData: "{olddata};{app}"; \
  Tasks: addtopath; Check: NeedsAddPath(ExpandConstant('{app}'))

[Run]
Filename: "{app}\invoke-nodes.exe"; Description: "{cm:LaunchProgram,invoke-nodes}"; Flags: nowait postinstall skipifsilent

; User data (models, outputs, sessions, plugins in %LOCALAPPDATA%\invoke-nodes) is left in place on
; uninstall: models are large and were downloaded by the user.

[Code]
function EnvKey(Param: String): String;
begin
  if IsAdminInstallMode then
    Result := 'SYSTEM\CurrentControlSet\Control\Session Manager\Environment'
  else
    Result := 'Environment';
end;

function NeedsAddPath(Dir: String): Boolean;
var
  Paths: String;
  RootKey: Integer;
begin
  if IsAdminInstallMode then RootKey := HKEY_LOCAL_MACHINE else RootKey := HKEY_CURRENT_USER;
  if not RegQueryStringValue(RootKey, EnvKey(''), 'Path', Paths) then
  begin
    Result := True;
    exit;
  end;
  Result := Pos(';' + Uppercase(Dir) + ';', ';' + Uppercase(Paths) + ';') = 0;
end;
