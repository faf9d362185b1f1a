// TlsCheck URL [USER [PASSWORD]]: connect with the PostgreSQL JDBC driver, print what the server
// sees, exit 0; on an SQLException print "sqlstate=XXXXX message=..." and exit 2.
// Compiled and run by tests/integration/test_tls.py.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;

public class TlsCheck {
	public static void main(String[] args) throws Exception {
		Properties p = new Properties();
		p.setProperty("user", args.length > 1 ? args[1] : "app");
		p.setProperty("password", args.length > 2 ? args[2] : "app");
		p.setProperty("connectTimeout", "10");
		p.setProperty("socketTimeout", "20");
		try (Connection c = DriverManager.getConnection(args[0], p);
				Statement s = c.createStatement();
				ResultSet r = s.executeQuery("SELECT inet_server_port(), "
						+ "(SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), "
						+ "current_setting('app.tenant_id')")) {
			r.next();
			System.out.println("port=" + r.getInt(1));
			System.out.println("server_ssl=" + r.getBoolean(2));
			System.out.println("tenant=" + r.getString(3));
		} catch (SQLException e) {
			System.out.println("sqlstate=" + e.getSQLState() + " message=" + e.getMessage());
			System.exit(2);
		}
	}
}
