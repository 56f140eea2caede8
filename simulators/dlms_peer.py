"""The independent DLMS peer: a COSEM server built on the Gurux library (``gurux-dlms``).

The gateway's client is ``dlms-cosem``; the simulated meter is written on a different code base
(Gurux's server classes: HDLC and wrapper framing, AARQ/AARE, GET/SET/ACTION, ciphering), so that the
interop tests check the client against DLMS written elsewhere, not against itself.

``gurux-dlms`` 1.0.203's Python server is out of step with its own command handlers in a few places;
``PeerServer`` fills exactly those gaps and nothing else (no frame or APDU is built here):

- ``GXServerReply`` lacks the ``setReply``/``getConnectionInfo``/``getCount``/``setCount`` the server
  calls (``_Reply`` adds them);
- the handlers call ``notifyRead``/``notifyConnected``/``getTransaction``/``setTransaction`` on the
  server, and pass ``list(e)`` of a single ``ValueEventArgs`` to the action hooks (made iterable);
- the SET handler asks its parameters for ``isMultipleBlocks()``, which they keep as ``multipleBlocks``,
  and the ACTION handler the settings for ``setConnected`` (after an HLS answer);
- ``handleSnrmRequest`` calls a missing ``GXHdlcSettings.update`` and the DISC reply reads parameters
  the HDLC setup object does not have: both UAs are built here with the same Gurux calls, from the
  negotiated settings (without this every HDLC conversation ended in a timeout on DISC);
- the RLRE's lengths do not match its content (the release then fails to parse): it is built here
  with the lengths right;
- the inactivity timer subtracts a datetime from an int: it is off (``inactivityTimeout = 0``).

High-level security, HLS-GMAC with security suite 0 (``hls``: the meter's keys and system title),
needs five more (IEC 62056-5-3, "HLS authentication mechanisms" and "Security"); every AES-GCM tag,
GMAC and ciphertext is still computed by Gurux (``GXCiphering``, ``GXSecure``):

- ``GXDLMSSecureServer`` stores its ``GXCiphering`` under a name the rest never reads
  (``settings.ciphering``): the server is given one as ``settings.cipher``;
- the AARE writes the responding-AP-title and the challenge with wrong BER lengths (one through
  ``setUInt8()`` with no value): ``_aare`` encodes the same fields with the lengths right;
- every association resets the meter's frame counter to 0 and the AARE does not advance it, so the
  AARE, the HLS answer and the first reply (and the RLRE and the next AARE) would share one GCM
  nonce: the counter lives in
  ``HlsSecrets`` and moves on after each use (the client refuses a counter that does not grow);
- ``reply_to_HLS_authentication`` reads the client's answer with ``int(bytes)``: ``_Association``
  checks it with the same ``GXSecure.secure`` call on the bytes;
- while the association is pending (before the HLS answer) the replies use service-specific
  ciphering (glo-action-response), which ``dlms-cosem`` does not parse: Gurux's own switch to
  general-glo-ciphering (``settings.preEstablishedSystemTitle`` with general-protection proposed)
  makes every ciphered reply general-glo-ciphering, as the client sends.

On the wrapper a refused association leaves Gurux bound to that client's address, so the public
client could not ask for the counter on the same connection: the peer forgets it (``answer``).

Gurux checks no client invocation counter: ``_decrypt`` hands each one Gurux decrypted to
``HlsSecrets.saw``, which refuses one not above the last (a replayed or stale AARQ is rejected, as
a real meter does) and keeps the last, which the public client reads in the invocation counter
object (0.0.43.1.0.255).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gurux_dlms import GXByteBuffer, GXServerReply
from gurux_dlms._GXAPDU import _GXAPDU
from gurux_dlms._HDLCInfo import _HDLCInfo
from gurux_dlms.AesGcmParameter import AesGcmParameter
from gurux_dlms.ConnectionState import ConnectionState
from gurux_dlms.CountType import CountType
from gurux_dlms.enums import (
    AccessMode,
    AssociationResult,
    Authentication,
    InterfaceType,
    MethodAccessMode,
    Security,
)
from gurux_dlms.enums.SourceDiagnostic import SourceDiagnostic
from gurux_dlms.GXCiphering import GXCiphering
from gurux_dlms.GXDLMS import GXDLMS
from gurux_dlms.GXDLMSChippering import GXDLMSChippering
from gurux_dlms.GXDLMSException import GXDLMSException
from gurux_dlms.GXDLMSLNParameters import GXDLMSLNParameters
from gurux_dlms.GXDLMSSettings import GXDLMSSettings
from gurux_dlms.GXSecure import GXSecure
from gurux_dlms.internal._GXCommon import _GXCommon
from gurux_dlms.objects import GXDLMSAssociationLogicalName, GXDLMSHdlcSetup, GXDLMSObject
from gurux_dlms.objects.enums import AssociationStatus
from gurux_dlms.secure import GXDLMSSecureServer
from gurux_dlms.ValueEventArgs import ValueEventArgs

ValueEventArgs.__iter__ = lambda self: iter([self])
GXDLMSLNParameters.isMultipleBlocks = lambda self: bool(self.multipleBlocks)
GXDLMSSettings.setConnected = lambda self, value: setattr(self, "connected", value)

INVOCATION_COUNTER_OBIS = "0.0.43.1.0.255"  # IEC 62056-6-1: the invocation counter of the global key set


@dataclass
class HlsSecrets:
    """A meter's HLS-GMAC side: its keys and system title, and the two counters it keeps between
    associations (in ``DlmsMeterModel``, so that they outlive a TCP connection's peer)."""

    encryption_key: bytes = field(repr=False)
    authentication_key: bytes = field(repr=False)
    system_title: bytes = b"GRX00001"
    server_counter: int = 1  # the next invocation counter the meter itself uses (its GCM nonce)
    client_counter: int | None = None  # the last invocation counter accepted from the client (None: none yet)
    refused_counters: int = 0
    bad_tags: int = 0

    def saw(self, counter: int) -> None:
        """A client APDU Gurux decrypted carried ``counter``: refused unless above the last one."""
        if self.client_counter is not None and counter <= self.client_counter:
            self.refused_counters += 1
            raise GXDLMSException(AssociationResult.PERMANENT_REJECTED, SourceDiagnostic.AUTHENTICATION_FAILURE)
        self.client_counter = counter


class _Ciphering(GXCiphering):
    """Gurux's ciphering whose frame counter is the meter's (``HlsSecrets``), not reset per association."""

    def __init__(self, secrets: HlsSecrets) -> None:
        self.secrets = secrets
        super().__init__(bytearray(secrets.system_title))
        self.blockCipherKey = bytearray(secrets.encryption_key)
        self.authenticationKey = bytearray(secrets.authentication_key)

    @property
    def invocationCounter(self) -> int:
        return self.secrets.server_counter

    @invocationCounter.setter
    def invocationCounter(self, value: int) -> None:
        # Gurux sets it to 0 at every association (``reset``); a meter's counter only grows.
        if value > self.secrets.server_counter:
            self.secrets.server_counter = value


_gurux_decrypt = GXCiphering.decrypt.__func__


def _decrypt(cls: Any, settings: Any, p: Any, data: Any) -> Any:
    """Gurux's decryption, then the GCM tag checked (Gurux 1.0.203 decrypts in its stream's encrypt
    mode, which never compares the tag: another key yields garbage instead of a refusal) by sealing
    the plaintext again with Gurux's ``encryptAesGcm`` and comparing; then the counter (``saw``)."""
    received = bytes(data.array()[data.position :])
    plain = _gurux_decrypt(cls, settings, p, data)
    if not isinstance(settings.cipher, _Ciphering):
        return plain
    if p.security == Security.AUTHENTICATION_ENCRYPTION:
        again = AesGcmParameter(0, p.systemTitle, p.blockCipherKey, p.authenticationKey)
        again.security, again.securitySuite, again.invocationCounter = p.security, p.securitySuite, p.invocationCounter
        again.type_ = CountType.DATA | CountType.TAG  # ciphertext and tag only
        if bytes(GXDLMSChippering.encryptAesGcm(again, bytes(plain))) not in received:
            settings.cipher.secrets.bad_tags += 1
            raise GXDLMSException(AssociationResult.PERMANENT_REJECTED, SourceDiagnostic.AUTHENTICATION_FAILURE)
    settings.cipher.secrets.saw(int(p.invocationCounter))
    return plain


GXCiphering.decrypt = classmethod(_decrypt)


def _aare(settings: Any, data: Any, result: Any, diagnostic: Any, cipher: Any, error: Any, encrypted: Any) -> None:
    """Gurux's ``_GXAPDU.generateAARE`` with every BER length right (IEC 62056-5-3, AARE): the same
    fields in the same order; the user-information (ciphered by Gurux when the AARQ was) is Gurux's."""
    settings.aare_result = result  # read by ``PeerServer.answer``
    body = GXByteBuffer()
    _GXAPDU.generateApplicationContextName(settings, body, cipher)
    body.set(bytes([0xA2, 3, 2, 1, int(result), 0xA3, 5, 0xA1, 3, 2, 1, int(diagnostic)]))
    if cipher is not None and (settings.authentication == Authentication.HIGH_GMAC or cipher.isCiphered()):
        title = bytes(cipher.systemTitle)
        body.set(bytes([0xA4, 2 + len(title), 0x04, len(title)]) + title)  # responding-AP-title
    if settings.userId != -1:
        body.set(bytes([0xA5, 3, 2, 1, settings.userId]))
    if settings.authentication > Authentication.LOW:
        challenge = bytes(settings.stoCChallenge)
        body.set(bytes([0x88, 2, 0x07, 0x80]))  # responder-acse-requirements: authentication
        body.set(bytes([0x89, 7, 0x60, 0x85, 0x74, 0x05, 0x08, 0x02, int(settings.authentication)]))
        body.set(bytes([0xAA, 2 + len(challenge), 0x80, len(challenge)]) + challenge)
    if result == AssociationResult.ACCEPTED or cipher is None or cipher.security == Security.NONE:
        if encrypted:
            raise ValueError("a pre-ciphered AARE is a client's feature")
        info = bytes(error.array()) if error else bytes(_GXAPDU.getUserInformation(settings, cipher))
        body.set(bytes([0xBE, 2 + len(info), 0x04, len(info)]) + info)
    data.setUInt8(0x61)
    _GXCommon.setObjectCount(len(body), data)
    data.set(body)


_GXAPDU.generateAARE = _aare


class _Association(GXDLMSAssociationLogicalName):
    """The association object, with ``reply_to_HLS_authentication`` (method 1) for HLS-GMAC on bytes
    (and the ``getAssociationStatus`` the method handler asks for)."""

    def getAssociationStatus(self) -> Any:
        return self.associationStatus

    def invoke(self, settings: Any, e: Any) -> Any:
        if e.index != 1 or settings.authentication != Authentication.HIGH_GMAC:
            return super().invoke(settings, e)
        answer = bytes(e.parameters or b"")
        cipher = settings.cipher
        # f(StoC): SC, IC, GMAC of our challenge under the client's system title and the IC it chose.
        expected = GXSecure.secure(
            settings, cipher, int.from_bytes(answer[1:5], "big"), settings.stoCChallenge, settings.sourceSystemTitle
        )
        if len(answer) != 17 or bytes(expected) != answer:
            self.associationStatus = AssociationStatus.NON_ASSOCIATED
            return None
        # f(CtoS) with the meter's own counter, which then moves on (a GCM nonce is used once).
        reply = GXSecure.secure(settings, cipher, cipher.invocationCounter, settings.getCtoSChallenge(), cipher.systemTitle)
        cipher.invocationCounter = cipher.invocationCounter + 1
        self.associationStatus = AssociationStatus.ASSOCIATED
        return bytes(reply)


class _Reply(GXServerReply):
    def setReply(self, value: Any) -> None:
        self.reply = value

    def getConnectionInfo(self) -> Any:
        return self.connectionInfo

    def getCount(self) -> int:
        return int(self.count)

    def setCount(self, value: int) -> None:
        self.count = value


Hook = Callable[[Any], None]


class PeerServer(GXDLMSSecureServer):
    """A Gurux logical-name server holding ``objects``; the model reacts through the hooks."""

    def __init__(
        self,
        objects: list[GXDLMSObject],
        *,
        hdlc: bool,
        physical: int | None = None,
        logical: int = 1,
        password: bytes | None = None,
        on_action: Hook | None = None,
        on_write: Hook | None = None,
        refuse: Callable[[], bool] = lambda: False,
        hls: HlsSecrets | None = None,
    ) -> None:
        super().__init__(_Association(), InterfaceType.HDLC if hdlc else InterfaceType.WRAPPER)
        self.hdlc = GXDLMSHdlcSetup()
        self.hdlc.inactivityTimeout = 0
        self.physical = physical
        self.logical = logical
        self.password = password
        self.on_action = on_action
        self.on_write = on_write
        self.refuse = refuse
        self.hls = hls
        if hls is not None:
            self.settings.cipher = _Ciphering(hls)
            # Gurux's switch to general-glo-ciphering for every ciphered reply (see the module docstring).
            self.settings.preEstablishedSystemTitle = bytearray(hls.system_title)
        association = _Association()
        self.items.append(association)
        for obj in objects:
            self.items.append(obj)
        for obj in list(self.items):
            association.objectList.append(obj)
        self.initialize()

    def answer(self, data: bytes) -> bytes:
        """Feed received bytes; the reply to send (empty while a frame is incomplete or not for us)."""
        sr = _Reply(bytes(data))
        self.handleRequest(sr)
        if self.settings.interfaceType == InterfaceType.WRAPPER and getattr(
            self.settings, "aare_result", AssociationResult.ACCEPTED
        ) != AssociationResult.ACCEPTED:
            # A refused association binds no client to the connection (Gurux keeps the first
            # client's address until a release): the next AARQ may come from another client.
            self.settings.aare_result = AssociationResult.ACCEPTED
            self.reset()
        return bytes(sr.reply or b"")

    # -- the gaps of gurux-dlms 1.0.203 (see the module docstring) ----------------------------------
    def handleSnrmRequest(self, data: Any) -> None:
        h = self.settings.hdlc
        h._update(self.hdlc)
        GXDLMS.parseSnrmUaResponse(data, h)
        self.reset(True)
        self._ua_parameters()
        self.settings.connected = ConnectionState.HDLC

    def generateDisconnectRequest(self) -> None:
        self._ua_parameters()

    def _ua_parameters(self) -> None:
        h = self.settings.hdlc
        r = self.replyData
        r.setUInt8(0x81)
        r.setUInt8(0x80)
        r.setUInt8(0)
        r.setUInt8(_HDLCInfo.MAX_INFO_TX)
        GXDLMS.appendHdlcParameter(r, h.maxInfoTX)
        r.setUInt8(_HDLCInfo.MAX_INFO_RX)
        GXDLMS.appendHdlcParameter(r, h.maxInfoRX)
        r.setUInt8(_HDLCInfo.WINDOW_SIZE_TX)
        r.setUInt8(4)
        r.setUInt32(h.windowSizeTX)
        r.setUInt8(_HDLCInfo.WINDOW_SIZE_RX)
        r.setUInt8(4)
        r.setUInt32(h.windowSizeRX)
        r.setUInt8(2, len(r) - 3)

    def handleAarqRequest(self, data: Any, connection_info: Any) -> None:
        try:
            super().handleAarqRequest(data, connection_info)
        except ValueError:
            # Gurux's GCM tag check failed on the ciphered InitiateRequest (another key): rejected,
            # as a meter does, instead of the hardware-fault answer Gurux would make of it.
            self.replyData.clear()
            if self.settings.interfaceType in (InterfaceType.HDLC, InterfaceType.HDLC_WITH_MODE_E):
                self.replyData.set(_GXCommon.LLC_REPLY_BYTES)
            self.settings.authentication = Authentication.NONE
            _aare(
                self.settings, self.replyData, AssociationResult.PERMANENT_REJECTED,
                SourceDiagnostic.AUTHENTICATION_FAILURE, self.settings.cipher, None, None,
            )
            return
        cipher = self.settings.cipher
        if cipher is not None and cipher.isCiphered():
            cipher.invocationCounter = cipher.invocationCounter + 1  # the AARE's ciphered InitiateResponse used it

    def handleReleaseRequest(self, data: Any) -> None:
        if self.settings.interfaceType in (InterfaceType.HDLC, InterfaceType.HDLC_WITH_MODE_E):
            self.replyData.set(0, _GXCommon.LLC_REPLY_BYTES)
        info = _GXAPDU.getUserInformation(self.settings, self.settings.cipher)
        r = self.replyData
        # RLRE (IEC 62056-5-3, ACSE): reason normal (80 01 00), user-information (BE) holding an
        # octet string (04) with the xDLMS InitiateResponse; every length is the content's that follows.
        r.setUInt8(0x63)
        r.setUInt8(3 + 2 + 2 + len(info))
        r.setUInt8(0x80)
        r.setUInt8(0x01)
        r.setUInt8(0x00)
        r.setUInt8(0xBE)
        r.setUInt8(2 + len(info))
        r.setUInt8(0x04)
        r.setUInt8(len(info))
        r.set(info)
        cipher = self.settings.cipher
        if cipher is not None and cipher.isCiphered():
            cipher.invocationCounter = cipher.invocationCounter + 1  # the RLRE's ciphered InitiateResponse used it

    def notifyRead(self, *args: Any) -> None:
        pass

    def notifyConnected(self, *args: Any) -> None:
        self.onConnected(*args)

    def getTransaction(self) -> Any:
        return self.transaction

    def setTransaction(self, value: Any) -> None:
        self.transaction = value

    # -- the abstract interface ---------------------------------------------------------------------
    def isTarget(self, server_address: int, client_address: int) -> bool:
        if self.physical is None:
            return bool(server_address == self.logical)
        # Gurux packs a two-byte HDLC server address as (upper << 7) | lower.
        return bool(server_address in (self.physical, (self.logical << 7) | self.physical))

    def onValidateAuthentication(self, authentication: Any, password: Any) -> Any:
        if self.refuse():
            return SourceDiagnostic.NOT_RECOGNISED
        if authentication == Authentication.HIGH_GMAC:  # the keys decide (the AARQ decrypted, then the GMACs)
            return SourceDiagnostic.NONE if self.hls is not None else SourceDiagnostic.AUTHENTICATION_FAILURE
        if self.hls is not None and authentication == Authentication.NONE:
            return SourceDiagnostic.NONE  # the public client, for the invocation counter
        if self.password is None:
            return SourceDiagnostic.NONE if authentication == Authentication.NONE else SourceDiagnostic.AUTHENTICATION_FAILURE
        if authentication == Authentication.LOW:
            ok = password is not None and bytes(password) == self.password
            return SourceDiagnostic.NONE if ok else SourceDiagnostic.AUTHENTICATION_FAILURE
        return SourceDiagnostic.AUTHENTICATION_REQUIRED if authentication == Authentication.NONE else SourceDiagnostic.NONE

    def onPreGet(self, args: Any) -> None:
        pass

    def onPostGet(self, args: Any) -> None:
        pass

    def onFindObject(self, object_type: Any, sn: Any, ln: Any) -> None:
        return None

    def onPreRead(self, args: Any) -> None:
        pass

    def onPostRead(self, *args: Any) -> None:
        pass

    def onPreWrite(self, args: Any) -> None:
        pass

    def onPostWrite(self, args: Any) -> None:
        if self.on_write is not None:
            for e in args:
                self.on_write(e)

    def onConnected(self, *args: Any) -> None:
        pass

    def onInvalidConnection(self, *args: Any) -> None:
        pass

    def onDisconnected(self, *args: Any) -> None:
        pass

    def _public_on_hls_meter(self) -> bool:
        return self.hls is not None and self.settings.authentication == Authentication.NONE

    def onGetAttributeAccess(self, arg: Any) -> Any:
        if self._public_on_hls_meter():  # the public client sees the association and the counter only
            ln = arg.target.logicalName
            return AccessMode.READ if ln in (INVOCATION_COUNTER_OBIS, "0.0.40.0.0.255") else AccessMode.NO_ACCESS
        return AccessMode.READ_WRITE

    def onGetMethodAccess(self, arg: Any) -> Any:
        if self._public_on_hls_meter():
            return MethodAccessMode.NO_ACCESS
        return MethodAccessMode.ACCESS

    def onPreAction(self, args: Any) -> None:
        if self.on_action is not None:
            for e in args:
                self.on_action(e)

    def onPostAction(self, args: Any) -> None:
        pass
